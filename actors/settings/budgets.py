"""The ``budgets:`` section checked against the rest of the configuration, and turned into core Budgets.

Each entry's own checks (one scope, usd > 0, a period) are in ``core.budget.BudgetSpec``;
here are those that need the whole file: a deployment or provider budget must name one that
is configured, a key budget a key of the HTTP section, and a strict budget's period must
fit in the ledger's retention (else its spend would be forgotten before the period ends).
"""

from __future__ import annotations

from actors.core.budget import Budget
from actors.settings.schema import GatewayConfig

__all__ = ["check_budgets", "budgets_of"]


def check_budgets(config: GatewayConfig) -> None:
    """ValueError("budgets[i].<field>: ...") for a budget that names nothing configured here."""
    deployments = {d.name for d in config.deployments}
    providers = {d.provider for d in config.deployments}
    keys = {k.name for k in config.http.keys} if config.http is not None else set()
    seen: dict[tuple[str, str, str], int] = {}
    retention_s = config.node.ledger_retention_days * 86400
    for i, spec in enumerate(config.budgets):
        b = spec.budget()
        if b.scope == "deployment" and b.name not in deployments:
            raise ValueError(f"budgets[{i}].deployment: no deployment is named {b.name!r} "
                             f"(configured: {', '.join(sorted(deployments))})")
        if b.scope == "provider" and b.name not in providers:
            raise ValueError(f"budgets[{i}].provider: no deployment uses provider {b.name!r} "
                             f"(configured: {', '.join(sorted(providers))})")
        if b.scope == "key" and config.http is not None and config.http.keys and b.name not in keys:
            raise ValueError(f"budgets[{i}].key: no HTTP key is named {b.name!r} (configured: {', '.join(sorted(keys))})")
        ident = (b.scope, b.name, b.period.text)
        if ident in seen:
            raise ValueError(f"budgets[{i}]: the same budget as budgets[{seen[ident]}] ({b.id})")
        seen[ident] = i
        if config.node.ledger is not None and b.period.nominal_s > retention_s:
            raise ValueError(f"budgets[{i}].period: {b.period.text} is longer than node.ledger_retention_days "
                             f"({config.node.ledger_retention_days:g}): its spend would be deleted before it ends")


def budgets_of(config: GatewayConfig) -> list[Budget]:
    return [spec.budget() for spec in config.budgets]

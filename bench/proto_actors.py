"""The bare minimum gateway, as a floor for bench_gateway.py: no queue, limits, breaker or retries.

client ask -> ProtoEngine -> ProtoWorker -> requests -> reply straight to the client.
"""

import requests
from thespian.actors import Actor


class ProtoWorker(Actor):
    def __init__(self):
        super().__init__()
        self.session = requests.Session()
        self.session.trust_env = False

    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and len(msg) == 4:
            reply_to, url, body, headers = msg
            resp = self.session.post(url, data=body, headers=headers, timeout=(2, 30))
            self.send(reply_to, resp.content)


class ProtoEngine(Actor):
    def __init__(self):
        super().__init__()
        self.workers = []
        self.next = 0

    def receiveMessage(self, msg, sender):
        if isinstance(msg, int):
            self.workers = [self.createActor(ProtoWorker) for _ in range(msg)]
            self.send(sender, "ready")
        elif isinstance(msg, tuple) and len(msg) == 3:
            self.next = (self.next + 1) % len(self.workers)
            self.send(self.workers[self.next], (sender,) + msg)

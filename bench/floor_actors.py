"""An actor for bench_channel_floor.py: sends a burst of TokenChunks to whoever asks."""

import os

from thespian.actors import Actor

from actors.types import TokenChunk


class ChunkSender(Actor):
    def receiveMessage(self, msg, sender):
        if msg == "pid":
            self.send(sender, os.getpid())
        elif isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "go":
            self.receiveMessage((sender, 0, msg[1]), sender)
        elif isinstance(msg, tuple) and len(msg) == 3:
            # One chunk per handler, as a worker sends them: each leaves when the handler returns.
            reply_to, seq, n = msg
            self.send(reply_to, TokenChunk("r_floor", seq, "tok "))
            if seq + 1 < n:
                self.send(self.myAddress, (reply_to, seq + 1, n))

"""A text model placed on one worker only (worker 0): a client must send its calls there."""

import tms_server


class Model(tms_server.Model):
    inputs = "text"
    thread_safe = True
    workers = 1

    def run(self, text, args):
        return {"worker": self.worker_index, "text": text}

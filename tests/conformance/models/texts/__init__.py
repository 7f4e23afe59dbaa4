"""A text model: counts code points, so every client must send UTF-8."""

import tms_server


class Model(tms_server.Model):
    inputs = "text"
    thread_safe = True
    version = "0.3"
    max_batch_size = 4

    def run(self, text, args):
        return {"length": len(text), "upper": text.upper(), "words": len(text.split())}

"""Fails on purpose: raises for every call, or refuses its input when asked to."""

import tms_server


class Model(tms_server.Model):
    thread_safe = True
    version = "0.0"

    def run(self, image, args):
        if args.get("refuse"):
            raise tms_server.InvalidInput("refused as asked")
        raise RuntimeError("this model always fails")

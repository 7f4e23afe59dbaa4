"""What the TMS client and server agree on beyond the proto, kept in one place for both.

- ``wire``: image-carrying messages written and read around the pixel bytes (no copies);
- ``codec``: images as numpy arrays and back, colour orders, results as JSON;
- ``load``: the load and identity trailers a worker sends with every answer;
- ``methods``: the gRPC paths of the ModelService methods and the field numbers of images.

The server imports from tms-client only this package (and ``tms.v1``).
"""

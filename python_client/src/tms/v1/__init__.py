"""Generated gRPC stubs and messages of the tms.v1 API (see proto/tms/v1)."""

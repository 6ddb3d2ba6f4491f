"""Generated protobuf stubs (make protos). Do not edit."""

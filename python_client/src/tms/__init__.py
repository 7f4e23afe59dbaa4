"""The TMS protocol packages (generated from proto/)."""

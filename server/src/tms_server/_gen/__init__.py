"""Generated code (codegen/generate.py); do not edit."""

"""editbench: lifelong model-editing benchmark harness."""
__version__ = "0.1.0"

"""tunekv: find the serving settings that give the most throughput under your latency targets."""

__version__ = "0.1.0"

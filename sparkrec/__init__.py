"""sparkrec: a distributed, Spark-based hybrid recommendation platform over Delta tables."""

__version__ = "0.1.0"

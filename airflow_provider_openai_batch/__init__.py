"""Apache Airflow provider for the OpenAI Batch API."""

__version__ = "0.1.0"

"""fleet-exporter: Longhorn storage across a fleet of Kubernetes clusters, for Prometheus."""

__version__ = "0.1.0"

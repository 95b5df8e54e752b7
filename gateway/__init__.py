"""protocol-gateway: a supervisor that bridges field devices to MQTT and InfluxDB."""

__version__ = "0.1.0"

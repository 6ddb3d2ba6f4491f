"""The MQTT side of the fleet: topic layout and payloads (topics), mesh clients (client), and the
mqtt-bridge workload that streams telemetry into IoTService.Ingest (bridge, main)."""

"""The audio service: voice activity, speech recognition, machine-sound anomalies, speech synthesis."""

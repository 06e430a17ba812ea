"""powgate_sidecar"""

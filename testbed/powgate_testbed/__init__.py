"""powgate_testbed"""

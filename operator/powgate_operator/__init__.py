"""powgate_operator"""

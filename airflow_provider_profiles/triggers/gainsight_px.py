"""Gainsight PX has no triggers: its REST API writes each record synchronously, so there is no remote job to poll.

The module exists because the provider registry lists one module per vendor.
"""

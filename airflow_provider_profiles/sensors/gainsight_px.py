"""Gainsight PX has no sensors: its REST API writes each record synchronously, so there is no remote job to wait for.

The module exists because the provider registry lists one module per vendor.
"""

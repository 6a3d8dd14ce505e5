"""Outgoing webhook delivery: the sender and the address guard it connects through."""

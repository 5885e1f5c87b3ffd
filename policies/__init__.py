"""hetagent.policies"""

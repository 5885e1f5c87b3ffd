"""hetagent.backends"""

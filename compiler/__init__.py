"""hetagent.compiler"""

"""hetagent.tools"""

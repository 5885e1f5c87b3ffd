"""hetagent.planner"""

"""hetagent.orchestrator"""

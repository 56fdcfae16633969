"""
Twisted glue: protocols, factories and connectors. The only place bytes move;
decisions are made by the pure cores they call.
"""

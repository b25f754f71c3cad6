"""Bridge Lite on one machine (`just up`)."""

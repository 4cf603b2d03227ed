"""Sources: what puts events onto the topics from outside, besides the agents (push, schedule)."""

"""Actor processes of Catalyst Supervisor: fetcher, dedupe, llm and alert."""

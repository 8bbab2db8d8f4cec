"""Platform-agnostic core: requests, credits, providers, storage, jobs, history. Never imports an adapter."""

"""Early-exit serving (`[server] mode = "early-exit"`): a heavy model run stage by stage
(`model`), the pure exit-aware stage scheduler (`stages`) and its asyncio shell (`batcher`)."""

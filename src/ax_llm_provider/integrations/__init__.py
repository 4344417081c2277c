"""Framework adapters. Import the submodule for your framework; this package imports no framework.

    from ax_llm_provider.integrations.langchain import ChatAXOllama, AXOllamaLLM, AXOllamaEmbeddings
    from ax_llm_provider.integrations.llamaindex import AXOllama, AXOllamaEmbedding

`langchain` needs the `langchain` extra (langchain-core), `llamaindex` the `llamaindex` extra.
"""

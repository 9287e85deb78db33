"""Facts in the CounterFact record schema: loaders, the embedded starter set, novel-fact generators."""

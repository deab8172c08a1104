//! Tokenizer, GPT-2 / CodeT5 generators, prompt assembly, training and decoding (not built yet: see the generator issue).

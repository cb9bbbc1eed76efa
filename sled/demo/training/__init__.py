"""Build the small demo models: a target LM and two distilled drafters.

The models exist to demonstrate the SLED system end to end on a laptop (a verifier
with a *target*, edge nodes with a *drafter*), not to produce good text. Everything is
trained from scratch on the King James Bible, which Debian ships as ``bible-kjv``, so
the build needs no network and no Hugging Face hub.

Pipeline (all randomness seeded by ``--seed``), one module per step:

1. **Corpus** (:mod:`.corpus`): ``bible -l 100000 gen1:1-rev22:21`` is parsed into
   chapters of plain text (one verse per line, verse numbers and chapter headings
   removed). Every 20th chapter is held out for validation. The text is cached under
   ``--work-dir``.
2. **Tokenizer** (:mod:`.corpus`): byte-level BPE (``tokenizers``), vocab 4096, one
   special token ``<|endoftext|>`` used as bos/eos/pad/unk. Chapters are joined with it.
3. **Target** (:mod:`.loop`): ``LlamaForCausalLM``, hidden 256, 4 layers, 4 heads,
   ~4.2M params, trained with AdamW, linear warmup and cosine decay on random
   128-token windows.
4. **Drafters** (:mod:`.loop`): ``drafter-1l`` (1 layer, hidden 128) and ``drafter-2l``
   (2 layers), distilled from the target's logits (KL to the target's softmax plus a
   little CE). Both drafters see the same batches, so one target forward serves both.
5. **Evaluation** (:mod:`.evaluate`) on held-out text, of the weights as saved (rounded
   to fp16): perplexity, greedy match rate (drafter argmax == target argmax), and the
   mean number of accepted draft tokens per round of greedy speculative decoding with
   k=4 drafts, measured two ways: one round from each of many held-out contexts, and
   real generate loops from a few held-out prompts (whose output is checked to equal
   the target's own greedy output). Greedy text from models this small soon repeats
   itself, which drafters predict easily, so the generate-loop number is the higher.
6. **Save** (:mod:`.save`) each model in fp16 safetensors as a complete HF model folder
   (config, weights, generation config, tokenizer), write ``metrics.json``, then reload
   each folder with the ``Auto*`` classes (local files only) and generate a greedy
   sample.

Sizes and step counts are in :mod:`.profiles`; :mod:`.pipeline` runs the steps in
order. Run ``python -m sled.demo.train`` (or ``sled train-demo``); ``--quick`` is a
smoke run.
"""

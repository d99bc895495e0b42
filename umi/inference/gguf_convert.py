"""Run llama.cpp's convert_hf_to_gguf.py on a checkpoint, recording umi's key in the GGUF (a subprocess of
umi.inference.gguf_export.export_gguf; never imported by umi).

    python -m umi.inference.gguf_convert CONVERTER_DIR CHECKPOINT OUTFILE GGUF_TYPE FINGERPRINT

It runs the converter's own `main()` with its own `gguf-py` (so it runs in a process of its own: umi's environment
has the PyPI `gguf`, which may be older), with two additions:
- the checkpoint's fingerprint is written into the GGUF's metadata (FINGERPRINT_KEY) before its header;
- a byte-level BPE tokenizer the converter does not recognise (its pre-tokenizer hash is in no list of known models,
  as a tokenizer trained for a test is not) is written with llama.cpp's default pre-tokenizer rather than refused,
  and marked `umi.tokenizer_unverified`. umi never uses llama.cpp's tokenizer: it passes the token ids its own
  tokenizer made and decodes the output with it (umi.inference.llama_cpp_backend), so only the weights matter to umi.
"""

from __future__ import annotations

import sys

from umi.inference.gguf_export import FINGERPRINT_KEY, UNVERIFIED_TOKENIZER_KEY  # imports no gguf package


def main(argv: list[str]) -> None:
    converter, checkpoint, outfile, gguf_type, fingerprint = argv
    sys.path.insert(0, converter)
    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outfile", outfile, "--outtype", gguf_type]
    import convert_hf_to_gguf  # puts the converter's gguf-py first on sys.path and imports it
    import gguf
    from conversion.base import TextModel

    unverified = []
    known_pre_tokenizer = TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return known_pre_tokenizer(self, tokenizer)
        except NotImplementedError:
            unverified.append(True)
            return "default"

    write_header = gguf.GGUFWriter.write_header_to_file

    def header_with_fingerprint(self, *args, **kwargs):
        self.add_string(FINGERPRINT_KEY, fingerprint)
        if unverified:
            self.add_bool(UNVERIFIED_TOKENIZER_KEY, True)
        return write_header(self, *args, **kwargs)

    TextModel.get_vocab_base_pre = pre_tokenizer
    gguf.GGUFWriter.write_header_to_file = header_with_fingerprint
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])

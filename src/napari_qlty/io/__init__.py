"""Everything that touches files: input readers, and the stores we write (predictions,
training pairs, sparse labels), each of which knows how to tell that a folder is ours."""

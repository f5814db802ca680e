"""Model families (bert, llama) and the pretrained-name registry; import submodules directly."""

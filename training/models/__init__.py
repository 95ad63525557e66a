"""Student models: the DFT/mel front end in torch and the compact CNN."""

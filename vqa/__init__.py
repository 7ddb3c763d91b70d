"""dba-vqa: visual question answering with Dynamic Bilinear Low-Rank Attention."""

"""Reference models in their sources' own libraries at jaxvlm's tiny sizes: open_clip's CoCa with
tiny-coca's arguments, its vocabulary head given values."""


def initialise_decoder_head(model):
    """open_clip allocates CoCa's vocabulary head with torch.empty and never initialises it (its
    MultimodalTransformer.init_parameters is not called): give it values, not leftover memory."""
    import torch

    head = model.text_decoder.text_projection
    torch.nn.init.normal_(head.data, std=head.shape[0] ** -0.5)
    return model


TINY_COCA = dict(  # open_clip CoCa arguments with the sizes of jaxvlm's "tiny-coca"
    embed_dim=32,
    multimodal_cfg=dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=2),
    text_cfg=dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=2, embed_cls=True, output_tokens=True),
    vision_cfg=dict(
        image_size=32, patch_size=8, width=64, layers=2, attentional_pool=True, attn_pooler_heads=2, output_tokens=True
    ),
)

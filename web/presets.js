// Prompt presets that teach what works with text-to-image models: say what the picture is (a
// photograph, and how it was taken), and list in the negative prompt what it must not look like.

export const DEFAULT_NEGATIVE = "blurry, ugly, deformed, amateur, vector, illustration";

export const PRESETS = [
  {
    name: "Studio portrait",
    prompt: "portrait photograph of an elderly fisherman, prime lens, studio lighting, white background",
    negative: DEFAULT_NEGATIVE,
    tip: "Name the medium and the camera: \"portrait photograph\", \"prime lens\", \"studio lighting\" pull towards photos.",
  },
  {
    name: "Product shot",
    prompt: "product photograph of a ceramic coffee mug, softbox lighting, white background, sharp focus, high detail",
    negative: DEFAULT_NEGATIVE + ", text, watermark",
    tip: "A plain background and even light give clean product images; ask for \"sharp focus\".",
  },
  {
    name: "Landscape",
    prompt: "landscape photograph of a mountain lake at golden hour, wide angle lens, mist, high detail",
    negative: DEFAULT_NEGATIVE + ", oversaturated",
    tip: "Time of day and lens (\"golden hour\", \"wide angle\") set the mood more than adjectives do.",
  },
  {
    name: "Interior",
    prompt: "a cozy corner with a warm fireplace and a comfy chair, interior photograph, natural light, 35mm",
    negative: DEFAULT_NEGATIVE,
    tip: "The negative prompt removes looks you do not want: here, anything drawn rather than photographed.",
  },
  {
    name: "Illustration",
    prompt: "watercolor illustration of a lighthouse on a cliff, soft pastel colors, paper texture",
    negative: "blurry, deformed, photograph, 3d render",
    tip: "For drawings, say the technique, and move \"photograph\" into the negative prompt.",
  },
];

from setuptools import find_packages, setup

# torch is bounded so that a machine which already has a CPU build of torch keeps it: pip only reaches for a
# (multi-GB, CUDA) wheel when the installed torch does not satisfy the range.
install_requires = [
    "torch>=2.1,<3",
    # The range CI tests: .ci/run runs the suite on the newest release allowed and the diffusers-facing tests on the
    # lowest (0.36.0 is the first that imports with transformers 5).
    "diffusers>=0.36.0,<0.43",
    "transformers>=4.46",
    "accelerate>=0.30",
    "safetensors>=0.4",
    "huggingface_hub>=0.23",
    "peft>=0.12",
    "datasets>=2.19",
    "einops>=0.7",
    "numpy>=1.24",
    "scipy>=1.9",
    "soundfile>=0.12",
    "av>=12",
    "Pillow>=9",
    "tqdm>=4.60",
    "face-alignment>=1.4",
    "tensorboard>=2.10",
]

extras = {
    # Face detector whose weights ship inside the wheel (face-alignment downloads its weights on first use).
    "mediapipe": ["mediapipe==0.10.14"],
    # The web demo (`diffusers-dawn demo`, app.py); the 6.x series is the one tested, offline included.
    "demo": ["gradio>=6.31,<7"],
    "test": ["pytest>=7", "scikit-image>=0.21", "mediapipe==0.10.14", "selenium>=4.20"],
}

setup(
    name="diffusers-dawn",
    version="0.1.0",
    description="DAWN talking-head generation (non-autoregressive diffusion) for the Hugging Face diffusers ecosystem",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"diffusers_dawn": ["assets/**/*"]},
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["diffusers-dawn=diffusers_dawn.cli:main"]},
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

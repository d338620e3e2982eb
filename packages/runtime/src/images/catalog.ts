/** The images Moat can build from Debian packages. Users refer to them by name. */
export interface ImageDefinition {
  name: string;
  description: string;
  suite: string;
  packages: string[];
}

const BASE_PACKAGES = ['bash', 'coreutils', 'python3', 'ca-certificates', 'curl', 'git', 'procps', 'iproute2'];

export const IMAGE_CATALOG: Record<string, ImageDefinition> = {
  base: {
    name: 'base',
    description: 'Debian bookworm with bash, coreutils, python3, ca-certificates, curl and git',
    suite: 'bookworm',
    packages: BASE_PACKAGES,
  },
  // E2B's code interpreter: a Jupyter kernel (IPython) per context, with the usual data stack, all from Debian.
  'code-interpreter': {
    name: 'code-interpreter',
    description: 'base plus an IPython kernel (ipykernel, jupyter-client), numpy, pandas and matplotlib',
    suite: 'bookworm',
    packages: [...BASE_PACKAGES, 'python3-ipykernel', 'python3-jupyter-client', 'python3-numpy', 'python3-pandas', 'python3-matplotlib'],
  },
};

export const DEFAULT_IMAGE = 'base';

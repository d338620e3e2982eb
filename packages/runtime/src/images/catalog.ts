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
};

export const DEFAULT_IMAGE = 'base';

# vdisk: one image, three entrypoints (`vdisk-agent controller|imager|attach`) plus the `vdisk` CLI.
# Node.js 24 runs the TypeScript sources directly (type stripping): the first stage only installs
# production dependencies; the second bundles the CLI (`npm run build`, dist/cli), which bin/vdisk.mjs
# runs while the sources beside it are the ones it was built from (and the sources otherwise).

FROM node:24-bookworm-slim AS dependencies
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=dev: the pinned `node` devDependency is not needed, the base image is Node.js 24.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:24-bookworm-slim AS bundle
WORKDIR /app
COPY package.json package-lock.json ./
# Dev dependencies for rolldown; no install scripts (the pinned `node` package would fetch a binary).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY scripts/build-cli.ts ./scripts/
COPY src ./src
RUN node scripts/build-cli.ts

FROM node:24-bookworm-slim AS runtime
# Exactly the tools the pods run: nbd-client binds /dev/nbdN, kpartx maps partitions, mkfs.ext4/xfs/
# vfat/btrfs format them (the filesystems spec.layout offers), util-linux mounts (the attach agent);
# xz decompresses .xz http sources for the imager (Node has no xz codec). The controller needs none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nbd-client kpartx e2fsprogs xfsprogs dosfstools btrfs-progs util-linux xz-utils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=dependencies /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
# src from the bundle stage: the very files (sizes, mtimes) the bundle's inputs list records.
COPY --from=bundle /app/src ./src
COPY --from=bundle /app/dist ./dist
RUN ln -s /app/bin/vdisk.mjs /usr/local/bin/vdisk \
 && ln -s /app/bin/vdisk-agent.mjs /usr/local/bin/vdisk-agent
# The controller runs as this non-root user with a read-only root filesystem (see the Helm chart);
# the attach pod is the only one that asks for root, in its own securityContext.
USER 65532:65532
ENTRYPOINT ["vdisk-agent"]
CMD ["controller"]

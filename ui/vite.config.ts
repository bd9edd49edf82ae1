// Builds the UI into dist/, which crates/host embeds and serves at `/`.
// `npm run dev` proxies the WebSocket to a host on the default port so the
// page and /v1/ws share an origin, as they do when the host serves the build.
import { defineConfig } from "vitest/config";
import { svelte } from "@sveltejs/vite-plugin-svelte";

export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      "/v1/ws": { target: "ws://127.0.0.1:6420", ws: true, changeOrigin: true },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});

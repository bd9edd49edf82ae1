// Svelte compiler options shared by Vite and svelte-check: TypeScript in
// <script lang="ts"> is stripped by the Vite plugin's preprocessor.
import { vitePreprocess } from "@sveltejs/vite-plugin-svelte";

export default { preprocess: vitePreprocess() };

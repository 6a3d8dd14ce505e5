// Starts Swagger UI on this server's /openapi.json. hookd's own file (see VENDORED.md).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default sends the document to validator.swagger.io; hookd's docs use no outside network.
    validatorUrl: null,
    persistAuthorization: false,
  });
});
